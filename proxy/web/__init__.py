"""Pages people see in a browser (sign-in, consent, errors): plain server-rendered HTML."""
