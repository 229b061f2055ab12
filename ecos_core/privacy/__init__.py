"""Differential privacy: ε from dp-accounting, and the device's ledger of every release."""
