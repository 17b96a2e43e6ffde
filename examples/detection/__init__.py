"""Detection fusion example: toy detectors with padded, variable-count outputs."""
