"""`spectax bench`: one harness for every decoding method. `methods` names them, `harness` times them interleaved
with plain decoding, `report` writes the JSON schema and the markdown table, `plots` the PNGs, `run` drives it all
from the command line's flags."""
