"""Downstream CTR evaluation of profile codes: a model zoo over one shared feature map.

The run-dir layout and the sidecar files written there are declared in
``downstream.layout``. ``<variant>`` is ``without`` (no profile features) or the name of
the quantizer output dir the codes came from (``userip``, ``kmeans``, ``agglomerative``,
``none`` for un-quantized vectors, or a size-sweep dir such as ``sweep-hobby_K8``),
``stat-full`` / ``stat-half`` for the stat codes; a bank gives the variant named by its
manifest's method. Every variant runs the same code path; only the feature map's code
fields differ. Each fit's metrics.json also holds AUC by user activity (train
interactions <= 10, 11-50, > 50).
"""
