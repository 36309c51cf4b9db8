"""Downstream CTR evaluation of profile codes: a model zoo over one shared feature map.

Run-dir layout (``userip train/evaluate/report --run DIR``)::

    <run>/downstream/<variant>/<model>/seed=<s>/model.json     training record (val AUC per
                                                               epoch, feature map, code source)
    <run>/downstream/<variant>/<model>/seed=<s>/model.pt       torch state (model.txt: LightGBM)
    <run>/downstream/<variant>/<model>/seed=<s>/metrics.json   test AUC, Logloss, UAUC
    <run>/downstream/new-users/held_out.json                   new-users protocol: the users held
                                                               out of CTR training, codes coverage
    <run>/downstream/new-users/<variant>/<model>/seed=<s>/     its fits (same files as above)
    <run>/stat-codes/{full,half}/                              label-derived stat codes
                                                               (``stat_codes: true``)
    <run>/report.md, <run>/metrics.json, <run>/fig*.png        written by ``userip report``

``<variant>`` is ``without`` (no profile features) or the name of the quantizer output
dir the codes came from (``userip``, ``kmeans``, ``agglomerative``, ``none`` for
un-quantized vectors, or a size-sweep dir such as ``kmeans_K8``), ``stat-full`` /
``stat-half`` for the stat codes; a bank gives the variant named by its manifest's
method. Every variant runs the same code path; only the feature map's code fields differ.
metrics.json also holds AUC by user activity (train interactions <= 10, 11-50, > 50).
"""
