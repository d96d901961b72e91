"""The Miipher-2 model: frozen SSL backbone with parallel adapters, and the vocoder."""
