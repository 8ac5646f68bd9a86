"""The lab: QEMU-based virtual hardware for P2PDMA and T10 PI kernel work."""

__version__ = "0.1.0"
