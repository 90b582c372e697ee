"""Converters between foreign checkpoint layouts and clipscratch's.

Each module holds pure functions ``state_dict -> state_dict`` (and config
inference); the model never knows where its weights came from.
"""
