"""Simulators: protocol servers for each device kind, driven by one plant model with fault injection."""
