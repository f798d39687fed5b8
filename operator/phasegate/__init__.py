"""phasegate: progressive delivery for trading strategies, where the canary weight is capital."""

__version__ = "0.1.0"
