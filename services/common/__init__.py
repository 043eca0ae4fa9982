"""Code every service shares: contracts, gRPC server plumbing, errors, tokenizers."""
