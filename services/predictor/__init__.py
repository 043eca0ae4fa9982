"""Output-length predictor: prompt features, XGBoost training to ONNX, and the gRPC service."""
