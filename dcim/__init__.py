"""dcim: telemetry and control daemon for data-centre infrastructure."""

__version__ = "0.1.0"
