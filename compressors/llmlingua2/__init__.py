"""LLMLingua-2 prompt compressor on ONNX Runtime."""
