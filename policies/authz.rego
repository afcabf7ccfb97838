# An OPA-Envoy style policy for a CUSTOM AuthorizationPolicy's gRPC ext-authz provider.
#
# `input` is the envoy.service.auth.v3.CheckRequest as JSON (what opa-envoy-plugin evaluates):
# input.attributes.source.principal is the client's SPIFFE ID, input.attributes.request.http has
# method, path, host and headers (lower-case names). tests/waypoint/test_ext_authz.py runs it
# with regopy inside a gRPC Authorization server.
package envoy.authz

import rego.v1

default allow := false

# Anyone may read the public pages.
allow if {
	input.attributes.request.http.method == "GET"
	startswith(input.attributes.request.http.path, "/public/")
}

# The sleep workload may do anything as alice.
allow if {
	input.attributes.source.principal == "spiffe://cluster.local/ns/app/sa/sleep"
	input.attributes.request.http.headers["x-user"] == "alice"
}
