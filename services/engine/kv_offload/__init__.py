"""Engine side of KV swapping: encoding a request's KV blocks into bytes (full, int8, int4) and back."""
