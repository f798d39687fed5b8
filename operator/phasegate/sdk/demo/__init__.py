"""The demo strategy: momentum on a seeded synthetic market, built on phasegate.sdk.

Run it with `python -m phasegate.sdk.demo` and the pod environment (see __main__).
"""
