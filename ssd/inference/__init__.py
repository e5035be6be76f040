"""Inference: checkpoints into models (`checkpoint.load_model`), the settings of the inference
path (`settings.InferenceSettings`), device and precision resolution (`device`, `runtime`),
network backends (`backends`), sliced inference (`sliced`), `detector.Detector` and ONNX export
(`export`). Above the model and evaluation layers, below `ssd.engine`."""
