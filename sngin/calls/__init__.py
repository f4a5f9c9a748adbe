"""Platform calls a script makes: `http.request` (outbound, through the egress guard), storage
and cache, mail, alerts, and the rules checked before any of them runs."""
