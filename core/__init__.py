"""maitred's transport-neutral routing core (installed as ``maitred.core``)."""

__version__ = "0.1.0"
