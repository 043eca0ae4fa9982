"""The default length model: model.onnx + metadata.json, trained by `alise predictor train`."""
