"""tecli: experiment runner for transfer-entropy accelerated training of CNNs."""

__version__ = "0.1.0"
