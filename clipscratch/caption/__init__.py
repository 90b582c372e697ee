"""Captioning from CLIP image features: a GPT-2-style decoder, parameter-efficient training, decoding."""
