"""The embedded object store: versioned objects, list options, label and field selectors and the
validation a kube-apiserver applies before storing.
"""
