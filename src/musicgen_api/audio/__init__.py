"""Codes to waveform (EnCodec) and waveform to WAV bytes."""
