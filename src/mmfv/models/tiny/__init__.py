"""mmfv-tiny: a small early-fusion LMM trained here on synthetic scenes and shipped as package data."""
