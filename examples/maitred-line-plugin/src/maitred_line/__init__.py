"""maitred-line-plugin: a plain TCP text transport for maitred (an example third-party plugin).

The entry point ``line`` (group ``maitred``) names :mod:`maitred_line.plugin`; installing the
package is all it takes for ``[transports.line]`` to become a valid config table.
"""

__version__ = "0.1.0"
