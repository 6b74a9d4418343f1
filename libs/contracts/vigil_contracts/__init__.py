"""Contracts shared by Vigil's services and its offline tooling.

Only pydantic and the standard library may be imported here: every service image installs this
package, and none of them may pay for another service's dependencies.
"""
