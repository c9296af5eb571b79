"""Tests of CryptoRLPM."""
