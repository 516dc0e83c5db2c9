"""proxyless-mesh: a service mesh inside the process, configured over xDS."""
