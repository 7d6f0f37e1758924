"""agentverify"""
