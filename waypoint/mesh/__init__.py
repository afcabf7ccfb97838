"""The mesh configuration: model values, their Kubernetes parsers, sources, and lookups.

``model`` (immutable values) <- ``kube``/``kinds`` (validation) <- ``folder`` (a source) ->
``snapshot`` (assembly) -> ``state`` (pure lookups the data plane reads per connection).
"""
