"""xds_client"""
