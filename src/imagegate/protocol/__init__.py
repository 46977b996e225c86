"""Wire models: the JSON that clients send and receive, with OpenAI's names and semantics.

Nothing below the service layer imports from here.
"""
