"""proxyembed.export: torch -> ONNX / TensorRT in fp32, fp16 and int8, validated by Recall@K drop."""
