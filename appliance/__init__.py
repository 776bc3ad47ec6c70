"""The appliance: finds hidden third-party routers reselling model-API access."""

__version__ = "0.1.0"
