#!/usr/bin/env node
// json_service.js - a service on maitred's WebSocket transport, in the maitred.json dialect.
//
//   node json_service.js [--url ws://127.0.0.1:8764/] [--key xyzzy] [--name shout]
//                        [--max N] [--seconds S]
//
// Registers as a worker of service NAME (and of NAME:upper and NAME:lower, its two methods) and
// answers every request, from any protocol (MDP, HTTP, middleman, JSON), with one partial reply
// and then the final one: {"from": "node", "method": ..., "text": <the request, upper- or
// lower-cased>}. Prints "ready <connection id>" once registered. Exits after N requests or S
// seconds when given (0: no limit), or when the broker closes the connection.
//
// The dialect (docs/reference/ws-json.md): WebSocket subprotocol `maitred.json`; one text frame
// = one JSON object with a `type`.
//
//   -> {"type": "hello", "key": ..., "name": ..., "version": ..., "methods": [...]}
//   <- {"type": "welcome", "id": ..., "services": [...]}
//   <- {"type": "request", "id": 42, "destination": "shout:upper", "consumer": ...,
//       "payload": <JSON value> | "data": <base64 bytes> | "frames": [<base64>...]}
//   -> {"type": "partial", "id": 42, "payload": ...}     (zero or more)
//   -> {"type": "reply", "id": 42, "payload": ...}       (or {"type": "error", "id": 42, ...})
//
// A request body that is one frame of valid JSON arrives as `payload`, other bytes as `data`
// (base64), several frames (an MDP client may send them) as `frames`.
'use strict';

const { parseArgs } = require('node:util');
const WebSocket = require('ws');

/** The request body as text, whichever of payload / data / frames carried it. */
function requestText(msg) {
  if (msg.payload !== undefined) {
    return typeof msg.payload === 'string' ? msg.payload : JSON.stringify(msg.payload);
  }
  if (msg.data !== undefined) return Buffer.from(msg.data, 'base64').toString('utf8');
  if (msg.frames !== undefined) {
    return msg.frames.map((f) => Buffer.from(f, 'base64').toString('utf8')).join('\n');
  }
  return '';
}

function main() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: process.env.MAITRED_WS || 'ws://127.0.0.1:8764/' },
      key: { type: 'string', default: process.env.MAITRED_KEY || 'xyzzy' },
      name: { type: 'string', default: 'shout' },
      max: { type: 'string', default: '0' },
      seconds: { type: 'string', default: '0' },
    },
  });
  const max = Number(values.max);
  const seconds = Number(values.seconds);
  let served = 0;

  const ws = new WebSocket(values.url, 'maitred.json');
  const send = (msg) => ws.send(JSON.stringify(msg));
  const finish = (why) => {
    process.stderr.write(`json_service: ${why}\n`);
    ws.close(1000); // the broker forgets the service at once
  };
  if (seconds > 0) {
    setTimeout(() => finish(`time limit of ${seconds} s reached`), seconds * 1000).unref();
  }

  ws.on('open', () => {
    // The first frame must be the hello; `methods` present makes us a service (worker).
    send({ type: 'hello', key: values.key, name: values.name, version: '1.0.0', methods: ['upper', 'lower'] });
  });
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const msg = JSON.parse(data.toString('utf8'));
    switch (msg.type) {
      case 'welcome':
        process.stdout.write(`ready ${msg.id} ${(msg.services || []).join(' ')}\n`);
        break;
      case 'request': {
        const method = msg.destination.includes(':') ? msg.destination.split(':')[1] : 'upper';
        const text = requestText(msg);
        // A partial reply first (MDP/0.2 and JSON callers see it; others get the final only).
        send({ type: 'partial', id: msg.id, payload: { progress: 50 } });
        send({
          type: 'reply',
          id: msg.id,
          payload: {
            from: 'node',
            method,
            text: method === 'lower' ? text.toLowerCase() : text.toUpperCase(),
          },
        });
        served += 1;
        if (max > 0 && served >= max) finish(`served ${served} requests, exiting`);
        break;
      }
      case 'error':
        // e.g. a registration the access policy refused (id null), or an answer the broker
        // could not route (the caller had gone).
        process.stderr.write(`json_service: error ${msg.code}: ${msg.message}\n`);
        break;
      default:
        break; // events, acks: not used here
    }
  });
  ws.on('close', (code, reason) => {
    process.stderr.write(`json_service: closed (${code} ${reason})\n`);
    process.exit(0);
  });
  ws.on('error', (err) => {
    process.stderr.write(`json_service: ${err.message}\n`);
    process.exit(1);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => finish(signal));
}

main();
