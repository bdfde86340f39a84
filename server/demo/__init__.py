"""Demo models built without PyTorch (e.g. all-MiniLM-L6-v2 as ONNX)."""
