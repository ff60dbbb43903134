"""The training core: a cell's seeds trained as one batched ensemble by one loop, from components that
are already built.

Modules: ``jobs`` (what a task is handed), ``numerics`` (device, deterministic kernels, matmul
precision), ``ensemble`` (the stacked members), ``compiling`` (torch.compile or eager),
``optimizer`` (batched AdamW), ``runlog`` (a member's evaluations and its record), ``loop`` (the
loop, for cells and trunks), and ``build`` (the one module that takes a plugin registry: it looks the
components up, builds them and calls the loop). Nothing here imports the experiment-file loader, and
only ``build`` is handed the registry.
"""
