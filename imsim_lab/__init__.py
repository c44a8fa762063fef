"""imsim-lab: teach, reproduce and compare image copy detection (ISC2021 / DISC21)."""

__version__ = "0.1.0"
