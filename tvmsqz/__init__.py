"""tvmsqz: SqueezeNet-class CNNs from ONNX to tuned TVM artifacts."""

__version__ = "0.1.0"
