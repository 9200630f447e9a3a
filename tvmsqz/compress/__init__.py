"""Deep Compression's storage for a model's weights: pruning, weight sharing, Huffman coding,
written as a `tvmsqz.weightfile` file that artifacts built with `--compress` decode at load.

Modules: `sharing` (prune, k-means codebooks), `huffman` (code lengths, bit packing), `writer`
(the file), `model` (which tensors of an ONNX model go into it, and the report).
"""
