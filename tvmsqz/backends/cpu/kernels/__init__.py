"""The CPU backend's kernels: blocked direct convolution, Winograd F(m, 3), their schedule spaces.

`constants` (block names, register budgets) -> `sched` (shared schedule primitives) ->
`direct`, `winograd` (TE compute + schedule) -> `direct_space` (the MetaSchedule space for both)
and `legalize` (the layout pipeline that lowers blocked convs to them). Nothing here imports
the backend package above it.
"""
