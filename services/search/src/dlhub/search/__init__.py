"""Search service: indexes servable documents and answers discovery queries."""
