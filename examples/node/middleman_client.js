#!/usr/bin/env node
// middleman_client.js - a client of maitred's WebSocket transport in middleman's text protocol.
//
//   node middleman_client.js req SERVICE BODY       REQ to a service, print the RES body
//   node middleman_client.js pubsub TOPIC BODY      SUB to TOPIC, PUB BODY on it, print what arrives
//
// Options: --url ws://127.0.0.1:8764/ (or $MAITRED_WS), --key xyzzy (or $MAITRED_KEY),
// --timeout SECONDS (default 10).
//
// The protocol (docs/reference/wire.md, docs/reference/ws.md): no subprotocol; the first text frame is
// the key, the server answers "MM OK" then our connection id. Then one text frame = one message:
//
//   CMD SP TARGET CRLF
//   Name: Value CRLF            (zero or more headers)
//   CRLF                        (the blank line is mandatory)
//   body, dot-stuffed CRLF      (a body line starting with "." gets another "." in front)
//   "." CRLF                    (terminator)
//
// Errors come back as a message "PUB ERROR" whose body is the reason, e.g. "No responder for REQ x".
//
// Keys: `xyzzy` (middleman's development service key) is trusted and may REQ any service.
// `plugh` (the client key) is untrusted: it may REQ a service only after a trusted connection
// granted it (EREQ by the service itself, or EPUB). The defaults are for a broker without
// [[transports.ws.keys]]; set your own keys in production.
'use strict';

const { parseArgs } = require('node:util');
const crypto = require('node:crypto');
const WebSocket = require('ws');

// -- the text protocol ------------------------------------------------------------------------

/** One message as a text frame: headers is an object of name -> string. */
function encode(command, target, headers, body) {
  let text = `${command} ${target}\r\n`;
  for (const [name, value] of Object.entries(headers || {})) {
    text += `${name}: ${value}\r\n`;
  }
  text += '\r\n';
  // Dot-stuffing: every body line that starts with "." gets one more.
  const lines = String(body).split(/\r?\n/).map((line) => (line.startsWith('.') ? `.${line}` : line));
  return `${text}${lines.join('\r\n')}\r\n.\r\n`;
}

/** Parse one text frame into {command, target, headers, body}. */
function decode(frame) {
  const lines = frame.split(/\r?\n/);
  const first = lines.shift();
  const space = first.indexOf(' ');
  if (space < 0) throw new Error(`no space in the first line: ${JSON.stringify(first)}`);
  const message = { command: first.slice(0, space), target: first.slice(space + 1), headers: {} };
  // Headers until the blank line (the server sends no continuation lines).
  for (;;) {
    if (lines.length === 0) throw new Error('no blank line after the headers');
    const line = lines.shift();
    if (line === '') break;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`a header line without ':': ${JSON.stringify(line)}`);
    message.headers[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  // Body lines until the "." line; undo the dot-stuffing.
  const body = [];
  for (;;) {
    if (lines.length === 0) throw new Error('no "." terminator');
    const line = lines.shift();
    if (line === '.') break;
    body.push(line.startsWith('.') ? line.slice(1) : line);
  }
  message.body = body.join('\n');
  return message;
}

// -- a connection -----------------------------------------------------------------------------

/** Connect, present the key, and resolve to {ws, cid, next()} once "MM OK" and the id came. */
function connect(url, key) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url); // no subprotocol: the middleman dialect
    const queue = []; // messages not yet taken by next()
    const waiters = [];
    let handshake = [];
    let failure = null;

    const fail = (err) => {
      failure = failure || err;
      reject(failure);
      while (waiters.length) waiters.shift().reject(failure);
    };
    ws.on('open', () => ws.send(key)); // the first frame is the key, as text
    ws.on('error', fail);
    ws.on('close', (code, reason) => fail(new Error(`connection closed: ${code} ${reason}`)));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return fail(new Error('a binary frame from the server'));
      const text = data.toString('utf8');
      if (handshake) {
        // Two text frames: "MM OK", then our connection id (also our channel MSG:<id>).
        handshake.push(text);
        if (handshake[0] !== 'MM OK') return fail(new Error(`handshake refused: ${text}`));
        if (handshake.length === 2) {
          const cid = handshake[1];
          handshake = null;
          resolve({ ws, cid, next });
        }
        return;
      }
      let message;
      try {
        message = decode(text);
      } catch (err) {
        return fail(err);
      }
      if (waiters.length) waiters.shift().resolve(message);
      else queue.push(message);
    });

    /** The next message from the server. */
    function next() {
      if (queue.length) return Promise.resolve(queue.shift());
      if (failure) return Promise.reject(failure);
      return new Promise((res, rej) => waiters.push({ resolve: res, reject: rej }));
    }
  });
}

// -- the two demos ----------------------------------------------------------------------------

/** REQ service, print the body of its RES. */
async function request(conn, service, body) {
  const reqId = crypto.randomUUID(); // our own correlation header, passed through unchanged
  conn.ws.send(encode('REQ', service, { ReqID: reqId }, body));
  for (;;) {
    const message = await conn.next();
    if (message.command === 'PUB' && message.target === 'ERROR') {
      throw new Error(message.body);
    }
    // Header names arrive canonicalised: ReqID -> Reqid.
    if (message.command === 'RES' && message.headers.Reqid === reqId) {
      process.stdout.write(`${message.body}\n`);
      return;
    }
  }
}

/** SUB topic, PUB body on it, and print the publication as it comes back to us. */
async function pubsub(conn, topic, body) {
  conn.ws.send(encode('SUB', topic, {}, ''));
  // SUB has no answer; messages of one connection are handled in order, so our PUB is
  // delivered after the subscription exists.
  conn.ws.send(encode('PUB', topic, {}, body));
  for (;;) {
    const message = await conn.next();
    if (message.command === 'PUB' && message.target === 'ERROR') {
      throw new Error(message.body);
    }
    if (message.command === 'PUB' && message.target === topic) {
      // Cid is the publisher's connection id: ours.
      const from = message.headers.Cid === conn.cid ? 'me' : message.headers.Cid;
      process.stdout.write(`${topic} (from ${from}): ${message.body}\n`);
      return;
    }
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: 'string', default: process.env.MAITRED_WS || 'ws://127.0.0.1:8764/' },
      key: { type: 'string', default: process.env.MAITRED_KEY || 'xyzzy' },
      timeout: { type: 'string', default: '10' },
    },
  });
  const [mode, name, body] = positionals;
  if (!['req', 'pubsub'].includes(mode) || !name || body === undefined) {
    process.stderr.write('usage: middleman_client.js [--url URL] [--key KEY] [--timeout S] '
      + '(req SERVICE | pubsub TOPIC) BODY\n');
    process.exit(1);
  }
  const timer = setTimeout(() => {
    process.stderr.write(`middleman_client: no answer within ${values.timeout} s\n`);
    process.exit(2);
  }, Number(values.timeout) * 1000);

  const conn = await connect(values.url, values.key);
  try {
    if (mode === 'req') await request(conn, name, body);
    else await pubsub(conn, name, body);
  } finally {
    clearTimeout(timer);
    conn.ws.removeAllListeners('close');
    conn.ws.on('error', () => {});
    conn.ws.close(1000);
  }
}

main().catch((err) => {
  process.stderr.write(`middleman_client: ${err.message}\n`);
  process.exit(1);
});
