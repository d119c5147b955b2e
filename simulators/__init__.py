"""Simulators: device fleet, signal models, fault scenarios, a simulated dispatch system."""
