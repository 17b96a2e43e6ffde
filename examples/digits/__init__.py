"""The digits example: small CNNs trained on scikit-learn's 8x8 digits."""
