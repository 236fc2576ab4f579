"""The end-to-end pipeline: data -> stats/sample -> train -> assign -> evaluate -> report."""
