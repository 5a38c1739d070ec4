"""PLACEHOLDER: written next."""
