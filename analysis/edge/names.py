"""The names the edge stages and their tables share: transfer modes, federated partitions, leakage
defenses and attacks, in the order the tables list them. No torch here, so that the table jobs can
import them without importing torch."""

#: TinyTL's transfer modes (``transfer.apply_mode``).
MODES = ("full", "last", "bn_last", "bias", "lite_residual", "lite_residual_bias")
#: How FedAvg splits the training set among clients (``federated.partition``).
PARTITIONS = ("iid", "dirichlet")
#: What a client does to its gradient before sending it (``leakage.defend``); "none" first.
DEFENSES = ("none", "gaussian", "laplacian", "prune")
#: Gradient-leakage attacks (``leakage.attack``).
METHODS = ("dlg", "idlg")
#: Compression methods of the source net (``stages.compression_stage``), one JSON each.
COMPRESSIONS = ("pruning", "quantization", "distillation")
