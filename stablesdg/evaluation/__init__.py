"""Generation quality: image features, FID and KID."""
