"""Target-independent Relax passes: Fire fusion (`fuse`), concat-free Fire modules (`concat_free`),
classifier padding (`pad_classes`), layout conversion (`layout`).

A pass transforms TVM IR through TVM's APIs and imports no backend: backends choose which passes
run (`layout_passes`, `pre_tuning_passes`, `post_database_passes`).
"""
