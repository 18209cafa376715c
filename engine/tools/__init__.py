"""Tool calling: the model's own call format, rendering tools into its template, parsing calls from its
text as it streams, and a grammar that forces a call or a JSON schema during sampling."""
