"""Inputs the tool makes or reads: synthetic images, input specs, normalisation estimates,
checks of user data."""
